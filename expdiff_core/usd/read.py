"""Read a delivered asset back the way a DCC does: UsdSkel's own blendshape and skinning evaluation."""

from __future__ import annotations

import numpy as np


def channel_weights(mesh_prim, time: float) -> dict[str, float]:
    """The animation's blendshape weight of each of the mesh's channels at ``time``."""
    from pxr import UsdSkel

    skel_query, skinning_query = _queries(mesh_prim)
    weights = skel_query.GetAnimQuery().ComputeBlendShapeWeights(time)
    mapper = skinning_query.GetBlendShapeMapper()
    if mapper and not mapper.IsIdentity():
        weights = mapper.Remap(weights)
    names = UsdSkel.BindingAPI(mesh_prim).GetBlendShapesAttr().Get() or []
    return {str(n): float(w) for n, w in zip(names, weights)}


def posed_points(mesh_prim, time: float) -> np.ndarray:
    """(V, 3) float32 points of a skinned mesh at ``time``, as UsdSkel computes them.

    The animation's weights are remapped to the mesh's channel order, applied through
    UsdSkelBlendShapeQuery, then skinned with the skeleton's transforms at ``time``.
    """
    from pxr import UsdGeom, UsdSkel

    skel_query, skinning_query = _queries(mesh_prim)
    weights = skel_query.GetAnimQuery().ComputeBlendShapeWeights(time)
    mapper = skinning_query.GetBlendShapeMapper()
    if mapper and not mapper.IsIdentity():
        weights = mapper.Remap(weights)
    shapes = UsdSkel.BlendShapeQuery(UsdSkel.BindingAPI(mesh_prim))
    sub_weights, shape_indices, sub_indices = shapes.ComputeSubShapeWeights(weights)
    points = UsdGeom.Mesh(mesh_prim).GetPointsAttr().Get(time)
    if not shapes.ComputeDeformedPoints(sub_weights, shape_indices, sub_indices,
                                        shapes.ComputeBlendShapePointIndices(),
                                        shapes.ComputeSubShapePointOffsets(), points):
        raise ValueError(f"{mesh_prim.GetPath()}: UsdSkel could not apply the blendshapes at time {time}")
    if not skinning_query.ComputeSkinnedPoints(skel_query.ComputeSkinningTransforms(time), points, time):
        raise ValueError(f"{mesh_prim.GetPath()}: UsdSkel could not skin the mesh at time {time}")
    return np.asarray(points, dtype=np.float32)


def _queries(mesh_prim):
    from pxr import Usd, UsdSkel

    root = UsdSkel.Root.Find(mesh_prim)
    if not root:
        raise ValueError(f"{mesh_prim.GetPath()}: not under a SkelRoot")
    cache = UsdSkel.Cache()
    cache.Populate(root, Usd.PrimDefaultPredicate)
    skeleton = UsdSkel.BindingAPI(mesh_prim).GetInheritedSkeleton()
    skel_query = cache.GetSkelQuery(skeleton)
    skinning_query = cache.GetSkinningQuery(mesh_prim)
    if not skel_query or not skinning_query or not skel_query.GetAnimQuery():
        raise ValueError(f"{mesh_prim.GetPath()}: no skeleton with an animation source is bound")
    return skel_query, skinning_query
