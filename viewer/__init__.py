"""`make viewer`: Orthanc with DICOMweb, the node and OHIF on loopback, to see the node's results."""
