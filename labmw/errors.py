"""Typed errors, one family per layer, all under :class:`LabmwError`.

Callers catch the narrowest class they can handle; the CLI turns any ``LabmwError`` into one line on
stderr and a non-zero exit. Anything that is not a ``LabmwError`` escaping a layer is a bug.
"""

from __future__ import annotations


class LabmwError(Exception):
    """Root of every error labmw raises on purpose."""


# --- wire (sans-I/O protocol engines and codecs) -------------------------------------------------
class WireError(LabmwError):
    """A protocol engine or codec could not go on."""


class LocalProtocolError(WireError):
    """We (the caller of an engine) broke the protocol: a programming error on our side."""


class RemoteProtocolError(WireError):
    """The peer broke the protocol; the link should be reset or closed."""


class CodecError(WireError):
    """Bytes or text that cannot be decoded into records, segments or frames."""


# --- mapping (wire records <-> results) ----------------------------------------------------------
class MappingError(LabmwError):
    """A decoded message does not carry what a result needs (no specimen, no test code, ...)."""


# --- configuration -------------------------------------------------------------------------------
class ConfigError(LabmwError):
    """The configuration file is missing, unreadable or invalid.

    The message always names the file, the key and what was expected.
    """

    def __init__(self, path: object, key: str | None, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


class UsageError(LabmwError):
    """A CLI argument is not acceptable (bad port, unknown method, low above high, ...)."""


# --- rules ---------------------------------------------------------------------------------------
class RuleError(LabmwError):
    """A rule cannot be evaluated as configured."""


# --- store ---------------------------------------------------------------------------------------
class StoreError(LabmwError):
    """The durable store failed; nothing may be acknowledged on the strength of it."""


class AuditIntegrityError(StoreError):
    """The audit trail's hash chain is broken."""


# --- forwarding ----------------------------------------------------------------------------------
class ForwardError(LabmwError):
    """Delivery to the LIS failed (connection, timeout, negative or mismatched ACK)."""


class NegativeAck(ForwardError):
    """The LIS answered AE/AR (or CE/CR)."""

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"LIS answered {code}: {text}" if text else f"LIS answered {code}")
