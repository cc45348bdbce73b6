"""Shared by the benchmarks that run a pipeline on one held-out identity: their flags and the loading."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from expdiff_core.facs import NEUTRAL
from expdiff_core.io.dataset import Dataset
from expdiff_core.io.mesh import FaceMesh
from expdiff_core.pipelines.expdiff import ExpDiffPipeline


def subject_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --dataset, --subject, --steps, --device."""
    parser.add_argument("--model", required=True, help="pipeline folder")
    parser.add_argument("--dataset", required=True, help="dataset with the identity (held out from training)")
    parser.add_argument("--subject", default=None, help="subject id (default: the dataset's first)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--device", default="cpu")


@dataclass
class Subject:
    """The pipeline and one identity's neutral: mesh on the template and its maps."""

    pipe: ExpDiffPipeline
    data: Dataset
    name: str
    mesh: FaceMesh
    maps: dict

    @property
    def mm(self) -> float:
        """Millimetres per mesh unit."""
        return {"cm": 10.0, "mm": 1.0, "m": 1000.0}[self.mesh.units]


def load_subject(args: argparse.Namespace) -> Subject:
    data = Dataset(args.dataset)
    name = args.subject or data.subjects[0]
    pipe = ExpDiffPipeline.from_pretrained(args.model, device=args.device)
    mesh = data.template().with_vertices(data.load_vertices(name, NEUTRAL), name=name)
    maps = data.load_maps(name, NEUTRAL, [k for k in pipe.config.kinds if k != "position"])
    return Subject(pipe, data, name, mesh, maps)
