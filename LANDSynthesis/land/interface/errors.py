"""Errors raised by the engine; each carries the CLI exit code it maps to."""

from __future__ import annotations


class LANDError(Exception):
    """Base class of the engine's errors."""

    exit_code = 1


class InputError(LANDError, ValueError):
    """Bad user input (masks, textures, options). The message names the problem and the fix. Exit 2."""

    exit_code = 2


class ModelError(LANDError):
    """A model directory problem: missing file, hash mismatch, incompatible config. Exit 3."""

    exit_code = 3


class TrainingDiverged(LANDError):
    """Training produced a non-finite loss or non-finite weights; the last good checkpoint is kept. Exit 3."""

    exit_code = 3


class Cancelled(LANDError):
    """Generation was cancelled by the user (cancel event or signal). Exit 130."""

    exit_code = 130
