"""The networks: our transformer, dVAE, VQ tokenizer and reranker, the imported families
(DALL·E Mega/Mini's BART and VQGAN), the upscaler, and the sampling precision (int8,
bf16, the compiled decode step). Torch modules only: no files, no bundle."""
