"""The exceptions lt_punch raises.

One tree, rooted at :class:`LtPunchError`::

    LtPunchError
    ├── ConfigError                 a setting or argument is invalid (names it)
    ├── ProtocolError               a message broke the signaling or STUN rules
    │   ├── LocalProtocolError      we tried to send something invalid
    │   └── RemoteProtocolError     the peer or server sent something invalid
    ├── SignalingError              the signaling server refused, went away or is unreachable
    ├── NATDiscoveryError           STUN / endpoint discovery failed
    ├── PunchError                  a hole punch failed (carries the reason)
    ├── LabError                    the NAT lab could not be built or used
    └── LtTimeoutError              a network wait ran out (also a TimeoutError)
"""

from __future__ import annotations


class LtPunchError(Exception):
    """Root of every exception raised on purpose by lt_punch."""


class ConfigError(LtPunchError, ValueError):
    """A configuration value, environment variable or argument is invalid."""


class ProtocolError(LtPunchError):
    """A message did not follow the protocol."""


class LocalProtocolError(ProtocolError):
    """We attempted to build or send an invalid message (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The remote side sent an invalid message."""


class SignalingError(LtPunchError):
    """The signaling server refused a request, closed, or cannot be reached."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class NATDiscoveryError(LtPunchError):
    """Discovering our public endpoints or NAT type failed."""


class PunchError(LtPunchError):
    """A hole punch did not produce a connection."""

    def __init__(self, message: str, reason: str = "failed") -> None:
        super().__init__(message)
        self.reason = reason


class LabError(LtPunchError):
    """The NAT lab could not be set up or torn down."""


class LtTimeoutError(LtPunchError, TimeoutError):
    """A network wait exceeded its timeout."""
