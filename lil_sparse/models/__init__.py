"""Our own PyTorch Llama/Qwen2 decoder and the attention seam the engine plugs its KV cache into."""

from lil_sparse.models.attention_fn import AttentionFn
from lil_sparse.models.config import ModelConfig, RopeScaling
from lil_sparse.models.dense_attention import DenseCausalAttention
from lil_sparse.models.transformer import CausalLM

__all__ = ["AttentionFn", "CausalLM", "DenseCausalAttention", "ModelConfig", "RopeScaling"]
