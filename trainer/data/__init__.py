"""Training and evaluation data: catalog, folder, idx files, labelled pairs / triplets."""

from trainer.data.build import DataContext, TrainingData, build_eval_data, build_training_data
from trainer.data.images import ArrayList, FileList, ImageDataset, ImageList, MediaList, preload
from trainer.data.split import ClassSplit, class_hash, split_classes
from trainer.data.tuples import TupleDataset, TupleRows, read_tuples_csv

__all__ = [
    "ArrayList", "ClassSplit", "DataContext", "FileList", "ImageDataset", "ImageList", "MediaList",
    "TrainingData", "TupleDataset", "TupleRows", "build_eval_data", "build_training_data",
    "class_hash", "preload", "read_tuples_csv", "split_classes",
]
