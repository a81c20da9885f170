"""Crisis safety: detect messages that express suicidal intent or self-harm, and answer them with a
fixed, caring reply that carries crisis resources (never the model's improvisation)."""

from bot.safety.detector import Assessment, assess, is_crisis

__all__ = ["Assessment", "assess", "is_crisis"]
