"""The gradient of the Laplace deviance in closed form (canonical links).

At (theta, beta) PIRLS leaves the modes u, eta = X beta + Z Lambda u + offset and the
working weights W = diag(w).  The Laplace deviance is

    d = aic(mu) + |u|^2 + log|M|,     M = Lambda'Z'WZ Lambda + I

With v = wt mu_eta (y - mu) / variance(mu) (so d aic / d eta = -2 v), u stationary
(u = Lambda'Z'v), and a canonical link (-dv/deta = W, dW/deta = w' = wt dmu_eta/deta):

    dd/dtheta_j = dlogM_j - 2 (Z'v)' dLambda_j u + sum_i w'_i h_i deta_i/dtheta_j
    dd/dbeta_m  =         - 2 (X'v)_m            + sum_i w'_i h_i deta_i/dbeta_m

dlogM_j is d log|M| / dtheta_j at fixed W (the LMM's, from the block sums of M^-1,
``gradient``), h_i = (Z Lambda M^-1 Lambda'Z')_ii the row leverages (``leverage``), and
eta moves with the modes, which follow from differentiating u = Lambda'Z'v:

    deta/dtheta_j = t_j + Z Lambda du_j,    t_j = Z dLambda_j u
    M du_j        = dLambda_j'Z'v - Lambda'Z'W t_j                    (beta fixed)
    deta/dbeta_m  = x_m + Z Lambda du_m,    M du_m = -Lambda'Z'W x_m

When beta is inside PIRLS (lme4's nAGQ = 0) it moves with theta too, and (du_j, dbeta_j)
solve the whole PLS system [M, Lambda'Z'WX; X'WZ Lambda, X'WX] with right-hand side
[dLambda_j'Z'v - Lambda'Z'W t_j; -X'W t_j], deta/dtheta_j gaining X dbeta_j; X'v = 0 there,
so d's own dependence on beta drops out.  All solves use the factor at the modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from .gradient import dlogdet_M_entries, nearly_singular, theta_entries
from .leverage import RowLeverages
from .pcg import FactorPreconditioner
from .pls import PLS, PLSSolution

COLUMNS = 8  # parameters whose n-vectors deta are formed at once (memory: 8 n doubles each)


class NoGradient(Exception):
    """The closed form does not hold here: a vector term's T_k is (nearly) singular
    (d log|M| / dT_k needs T_k^-1), or PIRLS stopped short of the modes."""


@dataclass(frozen=True)
class Modes:
    """What the gradient reads at PIRLS's modes: u, and per row w, w' and v."""

    u: np.ndarray
    w: np.ndarray
    dw: np.ndarray
    v: np.ndarray


class Rows(Protocol):
    """The model rows' matrices (``weighted.WeightedPass``): Z, Z' (CSR) and X."""

    Z: sp.csr_matrix
    Zt: sp.csr_matrix
    X: np.ndarray


def laplace_gradient(
    pls: PLS, sol: PLSSolution, rows: Rows, lev: RowLeverages, at: Modes, over_beta: bool
) -> np.ndarray:
    """dd/dtheta, then dd/dbeta when ``over_beta`` (beta held fixed by PIRLS; else beta
    is inside PIRLS, nAGQ = 0) at the modes; the factor must hold M at them (``sol`` its
    solution, X included).  Raises ``NoGradient`` where the closed form does not hold."""
    tmap, theta = pls.tmap, sol.theta
    if any(T.shape[0] > 1 and nearly_singular(T) for T in tmap.blocks(theta)):
        raise NoGradient("a vector term's T_k is nearly singular")
    first = dlogdet_M_entries(pls, theta)  # before the leverages, which consume S^-1
    h = lev(pls.factor, float(theta[0]))
    Lambda = tmap.Lambda(theta)
    Zv = rows.Zt @ at.v
    entries = list(theta_entries(tmap))
    q, nt = len(at.u), len(entries)
    Du, Rv = np.zeros((q, nt)), np.zeros((q, nt))
    for j, (a, c, idx) in enumerate(entries):
        Du[idx[:, a], j] = at.u[idx[:, c]]  # dLambda_j u
        Rv[idx[:, c], j] = Zv[idx[:, a]]  # dLambda_j' Z'v
        first[j] -= 2.0 * float(Zv[idx[:, a]] @ at.u[idx[:, c]])
    if over_beta:
        first = np.concatenate([first, -2.0 * (rows.X.T @ at.v)])
        Rv = np.hstack([Rv, np.zeros((q, rows.X.shape[1]))])
    pre = FactorPreconditioner(pls.factor, sol, not over_beta)
    dwh = at.dw * h
    for cols in np.array_split(np.arange(len(first)), -(-len(first) // COLUMNS)):
        deta = _deta(rows, Lambda, Du, at.w, pre, Rv, cols, over_beta)
        first[cols] += dwh @ deta
    return first


def _deta(rows: Rows, Lambda, Du, w, pre, Rv, cols: np.ndarray, over_beta: bool) -> np.ndarray:
    """deta for the parameters ``cols`` (n x len(cols)): t = Z dLambda u (theta_j) or x_m
    (beta_m), and Z Lambda du (+ X dbeta) from one solve with the factor."""
    nt = Du.shape[1]
    T = np.asarray(rows.Z @ Du[:, cols[cols < nt]])
    if over_beta:
        T = np.hstack([T, rows.X[:, cols[cols >= nt] - nt]])
    WT = w[:, None] * T
    R = Rv[:, cols] - np.asarray(Lambda.T @ (rows.Zt @ WT))
    if not over_beta:  # nAGQ = 0: beta moves with the modes
        R = np.vstack([R, -(rows.X.T @ WT)])
    dmodes = pre.solve(R)
    q = Du.shape[0]
    T += rows.Z @ np.asarray(Lambda @ dmodes[:q])
    if not over_beta:
        T += rows.X @ dmodes[q:]
    return T
