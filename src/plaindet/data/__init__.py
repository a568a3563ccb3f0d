"""Datasets: reading COCO, YOLO and VOC into one sample format, checking, converting, auditing labels, augmenting."""

from plaindet.data.audit import AuditConfig, AuditReport, audit
from plaindet.data.formats import load_dataset
from plaindet.data.sample import DetectionDataset, LoadReport, Problem, Sample
from plaindet.errors import DatasetError

__all__ = ["AuditConfig", "AuditReport", "DatasetError", "DetectionDataset", "LoadReport", "Problem", "Sample", "audit", "load_dataset"]
