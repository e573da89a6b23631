"""The AiiDA work chains of aiida-mlff (entry points ``mlff.*``)."""

#: the extra in which a running campaign (and its active learning) publishes where it stands, for the CLI
PROGRESS_EXTRA = 'mlff_progress'
