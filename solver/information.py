"""The average information (AI) of the profiled objective: a Hessian for Newton's method.

With V = sigma^2 (Z Lambda Lambda'Z' + W^-1), P = V^-1 - V^-1 X (X'V^-1 X)^-1 X'V^-1 and
the parameters phi = (theta, sigma^2), the objective -2 l (REML; ML alike with beta
profiled) has

    d/dphi_i        = tr(P V_i) - y'P V_i P y
    d2/dphi_i dphi_j = tr(P V_ij) - tr(P V_i P V_j) + 2 y'P V_i P V_j P y - y'P V_ij P y

whose expectation is tr(P V_i P V_j); the average of the two, without the V_ij terms
(Gilmour, Thompson and Cullis 1995, Biometrics 51), is

    AI_ij = t_i' P t_j,      t_i = V_i P y,

which needs no trace: only solves of the PLS system with the t_i as responses.  All of
it lives in the cross-products.  P y = e / sigma^2 with e = y - X beta - Z b the
conditional residuals, Lambda'Z'W e = u, and with rz = Z'W e and Lambda_j = dLambda/dtheta_j:

    t_j     = Z c_j,   c_j = Lambda_j u + Lambda Lambda_j' rz         (theta_j)
    t_sigma = (y - X beta) / sigma^2                                  (sigma^2)

For responses T = Z C, with A = Z'WZ and the factor at theta (``PLS.solve``'s names),

    sigma^2 T'P T = C'A C - cu_T'cu_T - cbeta_T'cbeta_T,
        cu_T = L^-1 P Lambda'A C,   cbeta_T = R_X^-T (X'WZ C - R_ZX' cu_T),

the bilinear form of pwrss = y'Wy - |c_u|^2 - |c_beta|^2; t_sigma'P t_j = rz'c_j / sigma^4
and t_sigma'P t_sigma = pwrss / sigma^6.  The objective is profiled over sigma^2
(sigma^2 = pwrss / nu), so its Hessian in theta is the Schur complement

    H = AI_theta,theta - AI_theta,sigma AI_sigma,theta / AI_sigma,sigma
      = X / sigma^2 - h h' / (nu sigma^4),     X = sigma^2 T'P T,  h_j = rz'c_j.

It is positive semi-definite, exact in expectation, and
close to the observed Hessian when the data say much about theta: Newton steps with
it converge in a few iterations (``optimize.minimize_newton``).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as la

from .gradient import A_times, theta_entries
from .pls import PLS, Criterion, PLSSolution


def average_information(pls: PLS, crit: Criterion, sol: PLSSolution) -> np.ndarray:
    """H, the AI approximation to the Hessian of the profiled objective in theta, at
    ``sol`` (the factor must hold ``sol.theta``)."""
    cp, tmap = pls.cp, pls.tmap
    u, b = pls.modes(sol)
    rz = cp.ZtY - cp.ZtX @ sol.beta - A_times(pls, b)
    C = _responses(pls, sol.theta, u, rz)
    AC = A_times(pls, C)
    cu = pls.factor.half_solve(np.asarray(tmap.Lambda(sol.theta).T @ AC))
    X = C.T @ AC - cu.T @ cu
    if crit.p:
        cbeta = la.solve_triangular(sol.RX, cp.ZtX.T @ C - sol.RZX.T @ cu, trans="T")
        X -= cbeta.T @ cbeta
    sigma2 = sol.pwrss / crit.nu
    h = rz @ C
    H = X / sigma2 - np.outer(h, h) / (crit.nu * sigma2 * sigma2)
    return (H + H.T) / 2


def _responses(pls: PLS, theta: np.ndarray, u: np.ndarray, rz: np.ndarray) -> np.ndarray:
    """C (q x len(theta)): column j is c_j = Lambda_j u + Lambda Lambda_j' rz, where
    theta_j sits at T_k[a, c]: (Lambda_j x)[idx[:, a]] = x[idx[:, c]]."""
    tmap = pls.tmap
    Lambda = tmap.Lambda(theta)
    C = np.zeros((len(u), len(theta)))
    for j, (a, c, idx) in enumerate(theta_entries(tmap)):
        C[idx[:, a], j] = u[idx[:, c]]
        back = np.zeros(len(u))
        back[idx[:, c]] = rz[idx[:, a]]
        C[:, j] += Lambda @ back
    return C
