"""The caption tokenizers: our byte-level BPE (``text``), BART's (``bart_text``) and
ruDALL-E's YouTokenToMe BPE (``yttm_text``)."""
