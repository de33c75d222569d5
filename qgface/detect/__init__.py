"""Face detection with five landmarks: MTCNN with its published weights (docs/method.md §9)."""

from qgface.detect.mtcnn import MTCNN, Face, nms
from qgface.detect.nets import DetectorWeightsError, find_mtcnn_weights

__all__ = ["MTCNN", "DetectorWeightsError", "Face", "find_mtcnn_weights", "nms"]
