"""Chapter 2 — KV-cache compression: projection, eviction, quantization, retrieval.

Modules, one idea each: ``base`` (the compressor interface), ``eviction`` (StreamingLLM, H2O, SnapKV),
``quant`` (KIVI-style quantization), ``projection`` (PCA, DCT, MatryoshkaKV and the rate search),
``longmem`` (an offloaded memory bank retrieved by key similarity), ``fused`` (reading a compressed cache
in place with the fused kernels), ``memo`` (activation memory in
training), ``harness`` (the shared-context, multi-turn / multi-request evaluation after SCBench).
"""
