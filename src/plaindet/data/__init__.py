"""Datasets: reading COCO, YOLO and VOC into one sample format, checking, converting, augmenting."""

from plaindet.data.formats import load_dataset
from plaindet.data.sample import DatasetError, DetectionDataset, LoadReport, Problem, Sample

__all__ = ["DatasetError", "DetectionDataset", "LoadReport", "Problem", "Sample", "load_dataset"]
