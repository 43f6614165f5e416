"""LMTP delivery (RFC 2033): the protocol engine and the narrow hook into storage.

* :mod:`.data`: sans-IO DATA decoding (dot-stuffing, end of data).
* :mod:`.trace`: the trace headers Dovecot's LMTP adds (Return-Path, Delivered-To,
  Received).
* :mod:`.delivery`: the :class:`Delivery` hook protocol and :class:`StorageDelivery`,
  the implementation over the passwd-file and the mail store.
* :mod:`.server`: :class:`LmtpServer` on aiosmtpd; knows only the hook.
"""

from __future__ import annotations

from aiodbox.lmtp.delivery import Delivery, DeliveryEnvelope, DeliveryError, StorageDelivery
from aiodbox.lmtp.server import LmtpServer

__all__ = ["Delivery", "DeliveryEnvelope", "DeliveryError", "LmtpServer", "StorageDelivery"]
