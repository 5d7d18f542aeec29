"""The NGSI-LD API (ETSI GS CIM 009), mounted under ``/ngsi-ld/v1``."""
