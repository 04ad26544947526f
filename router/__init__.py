"""dicom-router: a pipeline-based DICOM router daemon."""

__version__ = "0.1.0"
