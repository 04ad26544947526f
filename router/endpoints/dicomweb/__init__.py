"""The ``dicomweb`` endpoint: DICOMweb (PS3.18) over HTTP, on the same pipelines as DIMSE."""
