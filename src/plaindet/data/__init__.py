"""Datasets: reading COCO, YOLO and VOC into one sample format, checking, converting, augmenting."""

from plaindet.data.formats import load_dataset
from plaindet.data.sample import DetectionDataset, LoadReport, Problem, Sample
from plaindet.errors import DatasetError

__all__ = ["DatasetError", "DetectionDataset", "LoadReport", "Problem", "Sample", "load_dataset"]
