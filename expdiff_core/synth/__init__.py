"""Synthetic faces: our procedural template head, identities, the 56 FACS units as deformations, skin maps.

- ``template``: the head mesh (``template_mesh``), its UV layout (UDIM 1001 face, 1002 back), chart,
  regions and landmarks (``template_regions``, ``template_landmarks``; ``template.template()`` has it all).
- ``identity``: ``Identity``, ``sample_identity(seed)``, ``identity_vertices(identity)``.
- ``expressions``: ``expression_vertices(identity, unit)``, ``expression_set``, ``mean_delta_transfer_error``.
- ``skin``, ``factory``, ``ict``: BRDF maps from strain, the dataset factory, the ICT-FaceKit adapter.
"""

from .expressions import expression_displacement, expression_set, expression_vertices, mean_delta_transfer_error
from .identity import Identity, identity_vertices, sample_identity
from .template import template_landmarks, template_mesh, template_regions

__all__ = [
    "Identity", "expression_displacement", "expression_set", "expression_vertices", "identity_vertices",
    "mean_delta_transfer_error", "sample_identity", "template_landmarks", "template_mesh",
    "template_regions",
]
