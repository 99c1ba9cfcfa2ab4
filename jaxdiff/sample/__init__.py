"""Block-wise parallel diffusion sampling: `generate` (LLaDA semi-autoregressive blocks, remasking
policies, Fast-dLLM threshold decoding, KV caches, length head), `infill` / `fill_span`,
`ar_generate` (the AR head with a KV cache) and `scaffold_then_infill` (AR scaffold, diffusion body)."""
from jaxdiff.sample.ar import ArStats, ar_generate
from jaxdiff.sample.infill import fill_predicted_span, fill_span, infill, predict_span_length, scaffold_then_infill
from jaxdiff.sample.policies import (POLICIES, Entropy, LowConfidence, Margin, Random, RandomTopK, Threshold,
                                     get_policy)
from jaxdiff.sample.sampler import CACHES, SampleStats, generate

__all__ = ["ArStats", "CACHES", "Entropy", "LowConfidence", "Margin", "POLICIES", "Random", "RandomTopK",
           "SampleStats", "Threshold", "ar_generate", "fill_predicted_span", "fill_span", "generate", "get_policy",
           "infill", "predict_span_length", "scaffold_then_infill"]
