"""The peer: client certificate thumbprint (RFC 8705) and SPIFFE ID.

The proxy terminated TLS and validated the chain; ext_authz receives the leaf as URL-encoded PEM
(``source.certificate``, already decoded in :class:`~authz_server.request.Peer`) and/or the
peer's ``source.principal``. From the certificate: ``x5t#S256`` (base64url SHA-256 of the DER)
and the SPIFFE ID of its URI SAN, which X509-SVID requires to be the only one (Envoy's
principal silently takes the first, so the certificate wins when both are present) on a leaf
that is not a CA. Without a certificate, a ``spiffe://`` principal (agentgateway sends one).
SPIFFE IDs are taken only when ``mtls`` is configured, and only from its trust domains.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authz_server.identity.cache import LruCache
from authz_server.identity.config import MtlsConfig
from authz_server.identity.errors import VerificationFailed
from authz_server.identity.jws import b64url_encode
from authz_server.identity.keys import same_digest
from authz_server.identity.model import Reason
from authz_server.identity.spiffe import SpiffeId, is_spiffe_uri, parse_spiffe_id
from authz_server.request import Peer

CERT_CACHE_SIZE = 256
MAX_CERTIFICATE = 65536


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    thumbprint: str = ""
    spiffe_id: str = ""


@dataclass(frozen=True, slots=True)
class _Certificate:
    thumbprint: str
    uris: tuple[str, ...]
    leaf: bool  # neither a CA nor allowed to sign certificates or CRLs


NO_PEER = PeerIdentity()


def _malformed(detail: str) -> VerificationFailed:
    return VerificationFailed(Reason.MALFORMED, detail)


def read_certificate(pem: str) -> _Certificate:
    if len(pem) > MAX_CERTIFICATE:
        raise _malformed("the peer certificate is too large")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        der = cert.public_bytes(Encoding.DER)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            uris = ()
        leaf = True
        with contextlib.suppress(x509.ExtensionNotFound):
            leaf = not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        with contextlib.suppress(x509.ExtensionNotFound):
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            leaf = leaf and not (usage.key_cert_sign or usage.crl_sign)
    except (ValueError, UnicodeEncodeError, TypeError):
        raise _malformed("the peer certificate cannot be read") from None
    return _Certificate(b64url_encode(hashlib.sha256(der).digest()), uris, leaf)


class PeerVerifier:
    """Reads the peer of a request; certificates are parsed once each (cached by PEM)."""

    def __init__(self, config: MtlsConfig | None, *, cache_size: int = CERT_CACHE_SIZE) -> None:
        self._config = config
        self._certificates: LruCache[str, _Certificate] = LruCache(cache_size)

    def peer(self, source: Peer) -> PeerIdentity:
        """The peer's thumbprint and SPIFFE ID; :class:`VerificationFailed` for an unreadable
        certificate or SPIFFE ID (``malformed``) or a foreign trust domain (``wrong_issuer``)."""
        if not source.certificate:
            if self._config is None or not is_spiffe_uri(source.principal):
                return NO_PEER
            return PeerIdentity(spiffe_id=_spiffe(source.principal, self._config))
        cert = self._certificates.get(source.certificate)
        if cert is None:
            cert = read_certificate(source.certificate)
            self._certificates.put(source.certificate, cert)
        if self._config is None:
            return PeerIdentity(thumbprint=cert.thumbprint)
        spiffe = [uri for uri in cert.uris if is_spiffe_uri(uri)]
        if not spiffe:
            return PeerIdentity(thumbprint=cert.thumbprint)
        if len(cert.uris) != 1:
            raise _malformed("an X509-SVID must have exactly one URI SAN")
        if not cert.leaf:
            raise _malformed("an X509-SVID must be a leaf certificate")
        return PeerIdentity(cert.thumbprint, _spiffe(spiffe[0], self._config))


def _spiffe(text: str, config: MtlsConfig) -> str:
    spiffe_id: SpiffeId | None = parse_spiffe_id(text)
    if spiffe_id is None:
        raise _malformed("the peer's SPIFFE ID breaks the SPIFFE ID rules")
    if spiffe_id.trust_domain not in config.trust_domains:
        raise VerificationFailed(Reason.WRONG_ISSUER, "the peer's trust domain is not trusted")
    return str(spiffe_id)


def check_binding(x5t: str, peer: PeerIdentity) -> None:
    """RFC 8705 §3: a token bound to a certificate needs that very certificate."""
    if not peer.thumbprint:
        raise VerificationFailed(
            Reason.CERTIFICATE_MISMATCH, "the token is bound to a certificate; none was presented"
        )
    if not same_digest(x5t, peer.thumbprint):
        raise VerificationFailed(
            Reason.CERTIFICATE_MISMATCH, "the token is bound to another certificate"
        )
