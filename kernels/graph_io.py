"""The names of the model graph's inputs and outputs: the captured frame, the pane ROIs, and the
preprocessed pixels between the preprocessing graph and the backbone. A module of its own so the
engine and the backends can name them without importing onnx or numpy."""

FRAME, ROIS, PIXELS = "frame", "rois", "pixels"
