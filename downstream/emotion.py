"""Emotion recognition's head: SUPERB ER pools the projected frames and classifies the utterance, which is the
generic utterance classifier."""

from .classifier import UtteranceClassifier as EmotionClassifier

__all__ = ["EmotionClassifier"]
