"""Exact references: exit times by quadrature, stationary laws, asymptotic escape formulas."""

from .escape import (
    NOISES,
    kramers_escape_point,
    kramers_exit_time,
    kramers_time,
    langevin_escape_time,
    noise_covariance,
    pld_escape_time,
    pld_formula_range,
)
from .mfpt import log_mean_exit_time, mean_exit_time
from .stationary import (
    check_pld_normalizable,
    gibbs_density,
    langevin_temperature,
    pld_is_normalizable,
    pld_kappa,
    pld_max_lr,
    pld_stationary_density,
    pld_student_t,
    pld_tail_index,
)
from .wells import KramersGeometry, kramers_geometry, kramers_grad, kramers_loss
