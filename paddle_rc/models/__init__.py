from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig
from paddle_rc.models.llava import LlavaForConditionalGeneration

__all__ = ["CLIPTextConfig", "CLIPVisionConfig", "LlamaConfig", "LlavaConfig", "LlavaForConditionalGeneration"]
