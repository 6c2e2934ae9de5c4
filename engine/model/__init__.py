"""The model: DeepSeek-V3 as PyTorch modules (MLA, DeepSeekMoE, MTP, YaRN), named like the
Hugging Face checkpoint so that loading is an identity map."""
