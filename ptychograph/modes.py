"""Probe-mode orthogonalisation and power shares (docs/design.md, "Step 6").

Mixed-state reconstruction (Thibault & Menzel, Nature 494 (2013)) determines the probe modes only
up to a unitary mixing; power shares are meaningful for orthogonal modes. Orthogonalising the
working modes is a rotation P' = R P in mode space, and the same R must be applied to the exit
waves (:func:`ptychograph.views.rotate_modes`) so that DM stays consistent.
"""

from __future__ import annotations

import numpy as np

from ptychograph.backend import Array, get_array_module, to_host


def orthogonalise(probe: Array) -> tuple[Array, Array]:
    """Orthogonalise probe modes, strongest first.

    probe : (M_P, H, W) complex. Returns ``(rotated, rotation)`` with rotated = rotation @ probe
    (over the mode axis), rotated modes mutually orthogonal and sorted by decreasing power, and
    rotation (M_P, M_P) unitary. Uses the eigen-decomposition of the small Gram matrix
    G = A A^H of the stacked modes A (M_P, H*W), equivalent to an SVD of A.
    """
    xp = get_array_module(probe)
    n_modes = probe.shape[0]
    if n_modes == 1:
        return probe, xp.eye(1, dtype=probe.dtype)
    stacked = probe.reshape(n_modes, -1)
    gram = np.asarray(to_host(stacked @ xp.conj(stacked).T), dtype=np.complex128)
    eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1]
    eigvec = eigvec[:, order]
    # Fix each eigenvector's free phase so that R[k, k] is real and positive: modes that are
    # already orthogonal and sorted then give R = I (no drift of the modes' phases).
    diagonal = np.diagonal(eigvec).copy()
    diagonal[np.abs(diagonal) < 1e-12] = 1.0
    eigvec = eigvec * (np.abs(diagonal) / diagonal)[None, :]
    rotation_host = eigvec.conj().T  # U^H
    rotation = xp.asarray(rotation_host.astype(probe.dtype))
    rotated = (rotation @ stacked).reshape(probe.shape)
    return rotated, rotation


def align_modes(modes: Array, reference: Array) -> Array:
    """``modes`` mixed by the unitary U that brings them closest to ``reference``:
    argmin_U ||reference - U modes|| (orthogonal Procrustes, U = W V^H from the SVD
    reference modes^H = W S V^H). For one mode, U is the global phase.

    modes, reference : (M, ...) complex of one shape. Returns (M, ...) complex. Probe modes
    (and object modes) are determined only up to such a mixing (and a global phase), which
    leaves every far-field intensity unchanged (docs/design.md, "Averaging")."""
    xp = get_array_module(modes)
    n_modes = modes.shape[0]
    flat, ref = modes.reshape(n_modes, -1), xp.asarray(reference).reshape(n_modes, -1)
    cross = np.asarray(to_host(ref @ xp.conj(flat).T), dtype=np.complex128)  # (M, M)
    left, _, right = np.linalg.svd(cross)
    unitary = xp.asarray((left @ right).astype(modes.dtype))
    return (unitary @ flat).reshape(modes.shape)


def power_shares(probe: Array) -> np.ndarray:
    """Share of total probe power per mode after orthogonalisation: (M_P,) float, sums to 1."""
    xp = get_array_module(probe)
    rotated, _ = orthogonalise(probe)
    power = to_host(xp.sum(xp.abs(rotated) ** 2, axis=(1, 2))).astype(np.float64)
    total = power.sum()
    return power / total if total > 0 else np.full(power.shape, 1.0 / power.size)
