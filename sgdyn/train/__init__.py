"""Large-batch Flax training with state-dependent noise injection (THEORY.md section 6).

Flat re-exports: noise injections (Optax transformations), models, data sets, the vmapped
training loop and the sharpness (Lanczos, or power iteration).
"""

from .data import Dataset, load_dataset, load_npz, mnist1d, teacher_student
from .loop import TrainResult, TrainState, init_params, train
from .models import (CNN1D, MLP, accuracy, make_model, mean_loss, per_example_grads,
                     per_example_loss)
from .noise import (NoiseState, add_fisher_noise, add_isotropic_noise, add_pld_noise,
                    add_reweighting_noise, fisher_factor, loss_weights, reweighted_loss,
                    reweighting_scale)
from .sharpness import hvp, lanczos_top_eigenvalue, power_iteration, top_hessian_eigenvalue

__all__ = [
    "Dataset", "load_dataset", "load_npz", "mnist1d", "teacher_student",
    "TrainResult", "TrainState", "init_params", "train",
    "CNN1D", "MLP", "accuracy", "make_model", "mean_loss", "per_example_grads", "per_example_loss",
    "NoiseState", "add_fisher_noise", "add_isotropic_noise", "add_pld_noise",
    "add_reweighting_noise", "fisher_factor", "loss_weights", "reweighted_loss",
    "reweighting_scale",
    "hvp", "lanczos_top_eigenvalue", "power_iteration", "top_hessian_eigenvalue",
]
