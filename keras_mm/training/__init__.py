"""Training runs from a config, usable from Python: what `keras-mm` commands call.

- `run_dir`: the run directory (start, refuse another config's checkpoint, resume) and the
  training plan in checkpoints.
- `checkpoint`: `RunCheckpoint`, atomic checksummed checkpoints (the previous one kept) that
  refuse non-finite weights (`DivergenceError`); `lock`: `RunLock`, one command per run
  directory (`RunDirLockedError`); `faults`: the kill tests' `KERAS_MM_FAULT` hook.
  docs/reliability.md says what a run keeps and how it resumes.
- `callbacks`: the standard callbacks (progress bar via `fit`, CSV, TensorBoard,
  `RunCheckpoint`, sample grids, FID with the best weights kept).
- `builders`: `build_teacher(config)`, `build_distiller(config, teacher)`, `load_model`.
- `data`: config -> `training_stream`, `reference_images`; `captions`: `CaptionData`.
- `runs`: `train_teacher(config, run_dir)` and `distill(config, teacher_path, run_dir)`.
- `sd3`: Stable Diffusion 3 teachers (model.network "sd3"): backbone, prompts, the
  teacher's own samples as data-free distillation data.

Errors the user must fix are `keras_mm.configs.ConfigError` (a ValueError) with one line.
"""

from keras_mm.training.builders import (  # noqa: F401
    build_distiller,
    build_teacher,
    check_model_fits_data,
    default_num_steps,
    load_model,
)
from keras_mm.training.callbacks import (  # noqa: F401
    feature_extractor,
    fid_callbacks,
    standard_callbacks,
)
from keras_mm.training.captions import CaptionData  # noqa: F401
from keras_mm.training.checkpoint import DivergenceError, RunCheckpoint  # noqa: F401
from keras_mm.training.data import reference_images, training_stream  # noqa: F401
from keras_mm.training.lock import RunDirLockedError, RunLock  # noqa: F401
from keras_mm.training.run_dir import (  # noqa: F401
    clear_run_dir,
    prepare_run_dir,
    training_plan,
)
from keras_mm.training.runs import distill, train_teacher  # noqa: F401
