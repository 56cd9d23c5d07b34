"""Certificates and keys for one throwaway control plane, as kubeadm lays them out.

One CA signs the API server's serving certificate and a client certificate per component;
RBAC sees each component by its certificate's CN (system:kube-controller-manager,
system:kube-scheduler: the bootstrap ClusterRoleBindings that kube-apiserver creates
bind those names) and the admin by its O=system:masters. A separate key pair signs
service-account tokens (the TokenRequest API). ECDSA P-256 throughout: accepted by every
component, and quick to generate on every start.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kindling.cluster import nodes

# The API server's names, as a pod or a person reaches it (kubeadm's list); the service
# IP is the first of --service-cluster-ip-range.
SERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
# The real node's bridge address too: with a real node the API server listens there, where
# pods reach it through the `kubernetes` Service (hostnet.NODE_IP).
SERVER_IPS = ("127.0.0.1", "10.96.0.1", nodes.REAL_NODE_IP)
VALIDITY = datetime.timedelta(days=7)  # a test cluster outlives no test run

# component -> (CN, O): who RBAC sees.
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("kubernetes-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    # kwok writes every fake node's and pod's status and the node leases, as kwokctl's
    # own set-up does with its admin certificate.
    "kwok": ("kwok-controller", "system:masters"),
    # The real node: the Node authorizer and NodeRestriction know a kubelet by this name
    # and group (kubeadm's kubelet.conf); kube-proxy by the user the bootstrap
    # ClusterRoleBinding system:node-proxier binds; CoreDNS by a name its own
    # ClusterRole is bound to (node.py); the API server's client for kubelets as
    # kubeadm's apiserver-kubelet-client.
    "kubelet": (f"system:node:{nodes.REAL_NODE}", "system:nodes"),
    "kube-proxy": ("system:kube-proxy", None),
    "coredns": ("system:coredns", None),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
}


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def kubelet_serving_cert(self) -> Path:
        return self.dir / "kubelet-serving.crt"

    @property
    def kubelet_serving_key(self) -> Path:
        return self.dir / "kubelet-serving.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_cert(self, component: str) -> Path:
        return self.dir / f"{component}.crt"

    def client_key(self, component: str) -> Path:
        return self.dir / f"{component}.key"


def create(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kindling-test-ca")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_cert(pki.ca, ca)

    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVER_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
    _leaf(pki.server_cert, pki.server_key, ca, ca_key, "kube-apiserver", None, sans)
    # The kubelet's serving certificate, which the API server verifies when it dials the
    # node for logs and exec (--kubelet-certificate-authority), by the node's InternalIP.
    kubelet_sans: list[x509.GeneralName] = [x509.DNSName(nodes.REAL_NODE)]
    kubelet_sans.append(x509.IPAddress(ipaddress.ip_address(nodes.REAL_NODE_IP)))
    _leaf(
        pki.kubelet_serving_cert, pki.kubelet_serving_key, ca, ca_key,
        nodes.REAL_NODE, None, kubelet_sans,
    )  # fmt: skip
    for component, (cn, org) in CLIENTS.items():
        _leaf(pki.client_cert(component), pki.client_key(component), ca, ca_key, cn, org, None)

    sa = ec.generate_private_key(ec.SECP256R1())
    _write_key(pki.sa_key, sa)
    pki.sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clock skew between parts
        .not_valid_after(now + VALIDITY)
    )


def _leaf(
    cert_path: Path,
    key_path: Path,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    org: str | None,
    sans: list[x509.GeneralName] | None,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if sans else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(x509.Name(attributes), ca.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    _write_cert(cert_path, builder.sign(ca_key, hashes.SHA256()))
    _write_key(key_path, key)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
