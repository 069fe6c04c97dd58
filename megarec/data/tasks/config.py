"""Options of a task build (split, history lengths, sampling, caption hold-out, language, seed)."""

from __future__ import annotations

from dataclasses import dataclass

from megarec.common.errors import ConfigError


@dataclass
class BuildConfig:
    seed: int = 0
    lang: str = "en"  # template language (en, zh) or a YAML path
    split: str = "auto"  # "user" (held-out users), "loo" (leave-one-out), "auto" (source default)
    test_frac: float = 0.1  # user split: fraction of users held out for test
    min_history: int = 2  # shortest context of a recommendation sample
    max_history: int = 20  # longest context shown in a prompt (most recent items)
    rec_targets: int = 1  # user split: items to predict per recommendation sample
    samples_per_user: int = 2  # training cut points per user, domain and task
    caption_holdout_frac: float = 0.05  # items whose captions are held out for item-understanding eval
    test_target_captions: str = "include"  # "exclude": captions of test/valid target items never in training
    max_sequence_items: int = 100  # pre-training behaviour sequences: items per sample
    # "all": a longer history is cut into windows of max_sequence_items from the end, so every training item is
    # a next-item target once (as SASRec's training windows); "last": only the most recent window
    sequence_windows: str = "last"
    max_persona_events: int = 60  # pre-training persona text: most recent events kept
    system_prompt: bool = True  # prepend the template's system message to chat samples

    def validate(self) -> None:
        if self.split not in ("auto", "user", "loo"):
            raise ConfigError(f"split must be auto, user or loo, got {self.split!r}")
        if not 0.0 < self.test_frac < 1.0:
            raise ConfigError(f"test_frac must be in (0, 1), got {self.test_frac}")
        if not 0.0 <= self.caption_holdout_frac < 1.0:
            raise ConfigError(f"caption_holdout_frac must be in [0, 1), got {self.caption_holdout_frac}")
        if self.test_target_captions not in ("include", "exclude"):
            raise ConfigError("test_target_captions must be include or exclude")
        if self.min_history < 1 or self.max_history < self.min_history:
            raise ConfigError("need 1 <= min_history <= max_history")
        if self.sequence_windows not in ("all", "last"):
            raise ConfigError(f"sequence_windows must be all or last, got {self.sequence_windows!r}")
        if self.max_sequence_items < 2:
            raise ConfigError(f"max_sequence_items must be >= 2, got {self.max_sequence_items}")
        if self.rec_targets < 1 or self.samples_per_user < 1:
            raise ConfigError("rec_targets and samples_per_user must be >= 1")
