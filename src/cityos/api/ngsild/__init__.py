"""The NGSI-LD API (ETSI GS CIM 009 v1.8) at ``/ngsi-ld/v1``."""
