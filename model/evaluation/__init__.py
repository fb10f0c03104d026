"""Evaluation: ``dalle eval``'s measures (``evaluate``), its report (``eval_report``) and
``dalle bench`` (``bench``)."""
