"""Tasks: what differs between downstream problems (labels, head, loss, metrics, test outputs), so that one
LightningModule serves them all. `TASKS` maps names to classes; LightningCLI configs name the class path
(`recipes.tasks.EmotionTask`, or the defining module's path, which names the same class)."""

from .asd import ASD_EMBEDDINGS, AnomalyEvaluator, AsdTask, AuxiliaryAccuracyEvaluator, asd_class
from .asr import AsrTask, TranscriptionEvaluator, ctc_frames_needed
from .base import (
    TASKS,
    Calibration,
    EmbeddingTable,
    Evaluator,
    Predictor,
    Reduce,
    SplitData,
    Task,
    encode_labels,
    gather_objects,
    register_task,
    speakers_from_data,
    task_class,
    task_from_config,
)
from .classification import (
    AccuracyEvaluator,
    ClassificationEvaluator,
    EmotionTask,
    SpeakerIdTask,
    UtteranceClassificationTask,
)
from .verification import SpeakerVerificationTask, VerificationEvaluator

__all__ = [
    "ASD_EMBEDDINGS",
    "TASKS",
    "AccuracyEvaluator",
    "AnomalyEvaluator",
    "AsdTask",
    "AsrTask",
    "AuxiliaryAccuracyEvaluator",
    "Calibration",
    "ClassificationEvaluator",
    "EmbeddingTable",
    "EmotionTask",
    "Evaluator",
    "Predictor",
    "Reduce",
    "SpeakerIdTask",
    "SpeakerVerificationTask",
    "SplitData",
    "Task",
    "TranscriptionEvaluator",
    "UtteranceClassificationTask",
    "VerificationEvaluator",
    "asd_class",
    "ctc_frames_needed",
    "encode_labels",
    "gather_objects",
    "register_task",
    "speakers_from_data",
    "task_class",
    "task_from_config",
]
