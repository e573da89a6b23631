"""aiida-mlff: machine-learning force-field campaigns with full AiiDA provenance."""

__version__ = '0.1.0'
