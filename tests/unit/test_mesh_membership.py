"""Mesh authority, member certificates, single-use invites and revocation lists."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from covey.mesh.addresses import MAX_ADDRESSES
from covey.mesh.identity import node_id_for
from covey.mesh.membership import (
    MAX_INVITE,
    Authority,
    Contact,
    InviteBook,
    MemberCert,
    Members,
    MembershipError,
    create_authority,
    issue_cert,
    load_authority,
    newer,
    parse_invite,
    revoke,
    verify_cert,
    verify_revocations,
)
from covey.mesh.sealed import b64e, public_bytes

NOW = 1_800_000_000.0


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return create_authority(tmp_path)


def _node() -> bytes:
    return public_bytes(Ed25519PrivateKey.generate())


def test_authority_persists_privately(tmp_path: Path, authority: Authority) -> None:
    assert stat.S_IMODE(os.stat(tmp_path / "authority.key").st_mode) == 0o600
    loaded = load_authority(tmp_path)
    assert loaded is not None and loaded.mesh_id == authority.mesh_id
    with pytest.raises(FileExistsError):
        create_authority(tmp_path)  # never overwrite a mesh's key


def test_cert_round_trip_and_refusals(authority: Authority) -> None:
    node = _node()
    env = issue_cert(authority, node, NOW, ttl_s=3600)
    cert = verify_cert(env, mesh_id=authority.mesh_id, authority_public_key=authority.public_key,
                       now=NOW + 1)
    assert cert.node_id == node_id_for(node)
    other = Authority(Ed25519PrivateKey.generate())
    cases = [
        ({"mesh_id": other.mesh_id, "authority_public_key": authority.public_key}, "wrong_mesh"),
        ({"mesh_id": authority.mesh_id, "authority_public_key": other.public_key},
         "bad_signature"),
    ]
    for kw, reason in cases:
        with pytest.raises(MembershipError) as info:
            verify_cert(env, now=NOW, **kw)  # type: ignore[arg-type]
        assert info.value.reason == reason
    with pytest.raises(MembershipError) as info:
        verify_cert(env, mesh_id=authority.mesh_id, authority_public_key=authority.public_key,
                    now=NOW + 3601)
    assert info.value.reason == "expired"


def test_invite_is_single_use(tmp_path: Path, authority: Authority) -> None:
    book = InviteBook(tmp_path / "invites.db")
    invite = book.mint(authority, "192.0.2.1:7070", NOW, ttl_s=600)
    token = invite.token()
    assert "\n" not in token and parse_invite(token) == invite
    cert = book.redeem(authority, invite.invite_id, invite.secret, _node(), NOW + 1, 3600)
    assert verify_cert(cert, mesh_id=authority.mesh_id,
                       authority_public_key=authority.public_key, now=NOW + 2)
    with pytest.raises(MembershipError) as info:
        book.redeem(authority, invite.invite_id, invite.secret, _node(), NOW + 2, 3600)
    assert info.value.reason == "used"
    book.close()


@pytest.mark.parametrize(("change", "reason"), [
    ({"secret": "guessed"}, "unknown_invite"),
    ({"invite_id": "0000000000000000"}, "unknown_invite"),
    ({"now": NOW + 601}, "expired"),
])
def test_bad_redemptions(tmp_path: Path, authority: Authority, change: dict[str, object],
                         reason: str) -> None:
    book = InviteBook(tmp_path / "invites.db")
    invite = book.mint(authority, "192.0.2.1:7070", NOW, ttl_s=600)
    args: dict[str, object] = {"invite_id": invite.invite_id, "secret": invite.secret,
                               "now": NOW + 1}
    args.update(change)
    with pytest.raises(MembershipError) as info:
        book.redeem(authority, str(args["invite_id"]), str(args["secret"]), _node(),
                    float(args["now"]), 3600)  # type: ignore[arg-type]
    assert info.value.reason == reason
    book.close()


@pytest.mark.parametrize("token", ["", "hello", "covey-invite:", "covey-invite:!!!",
                                   "covey-invite:" + "A" * 5000, "covey-invite:e30"])
def test_damaged_invites(token: str) -> None:
    with pytest.raises(MembershipError):
        parse_invite(token)


def test_revocation(authority: Authority) -> None:
    a, b = _node(), _node()
    members = Members()
    for node in (a, b):
        members.admit(verify_cert(issue_cert(authority, node, NOW, 3600),
                                  mesh_id=authority.mesh_id,
                                  authority_public_key=authority.public_key, now=NOW))
    assert members.is_member(node_id_for(a), a, NOW)
    assert not members.is_member(node_id_for(a), b, NOW), "a cert binds one key"
    first, env1 = revoke(authority, None, node_id_for(a), NOW)
    second, env2 = revoke(authority, first, node_id_for(b), NOW + 1)
    for env, expected in ((env1, first), (env2, second)):
        assert verify_revocations(env, mesh_id=authority.mesh_id,
                                  authority_public_key=authority.public_key) == expected
    members.revocations = newer(newer(None, second), first)  # an older list never wins
    assert members.revocations == second
    assert not members.is_member(node_id_for(a), a, NOW)
    assert not members.is_member(node_id_for(b), b, NOW)
    forger = Authority(Ed25519PrivateKey.generate())
    _, forged = revoke(forger, None, node_id_for(a), NOW)
    with pytest.raises(MembershipError):
        verify_revocations(forged, mesh_id=authority.mesh_id,
                           authority_public_key=authority.public_key)


def test_bad_key_does_not_spend_the_invite(tmp_path: Path, authority: Authority) -> None:
    book = InviteBook(tmp_path / "invites.db")
    invite = book.mint(authority, "192.0.2.1:7070", NOW, ttl_s=600)
    with pytest.raises(MembershipError):
        book.redeem(authority, invite.invite_id, invite.secret, b"short", NOW + 1, 3600)
    assert book.redeem(authority, invite.invite_id, invite.secret, _node(), NOW + 1, 3600)
    book.close()


def test_edited_invite_mesh_id_is_refused(tmp_path: Path, authority: Authority) -> None:
    book = InviteBook(tmp_path / "invites.db")
    invite = book.mint(authority, "192.0.2.1:7070", NOW, ttl_s=600)
    book.close()
    edited = invite.model_copy(update={"mesh_id": "mothermesh000000"})
    with pytest.raises(MembershipError) as info:
        parse_invite(edited.token())
    assert info.value.reason == "wrong_mesh"


def test_late_old_certificate_does_not_shorten_membership(authority: Authority) -> None:
    node = _node()
    members = Members()

    def cert(ttl: float) -> MemberCert:
        return verify_cert(issue_cert(authority, node, NOW, ttl), mesh_id=authority.mesh_id,
                           authority_public_key=authority.public_key, now=NOW)

    members.admit(cert(7200))
    members.admit(cert(60))  # the old one arrives late
    assert members.is_member(node_id_for(node), node, NOW + 3600)


def test_invite_carries_every_contact_in_order(tmp_path: Path, authority: Authority) -> None:
    book = InviteBook(tmp_path / "invites.db")
    contacts = [Contact(address="10.0.0.2:7070", fingerprint="b" * 64),
                Contact(address="[2001:db8::1]:7070", fingerprint="b" * 64),
                Contact(address="10.0.0.2:7070", fingerprint="c" * 64),  # a repeat: dropped
                Contact(address="creator.lan:7070", fingerprint="a" * 64)]
    invite = parse_invite(book.mint(authority, contacts, NOW, ttl_s=600).token())
    book.close()
    assert [c.address for c in invite.reachable()] == [
        "10.0.0.2:7070", "[2001:db8::1]:7070", "creator.lan:7070"]
    # Older readers see the first contact in the old fields.
    assert (invite.address, invite.tls_fingerprint) == ("10.0.0.2:7070", "b" * 64)


def test_an_invite_from_before_contacts_has_one(authority: Authority) -> None:
    old = {"mesh_id": authority.mesh_id, "authority_public_key": b64e(authority.public_key),
           "address": "192.0.2.1:7070", "invite_id": "00", "secret": "s",
           "expires_at": NOW, "tls_fingerprint": "f" * 64}
    invite = parse_invite("covey-invite:" + b64e(json.dumps(old).encode()))
    assert invite.reachable() == [Contact(address="192.0.2.1:7070", fingerprint="f" * 64)]


def test_sixteen_long_contacts_fit_one_line(tmp_path: Path, authority: Authority) -> None:
    book = InviteBook(tmp_path / "invites.db")
    contacts = [Contact(address=f"[2001:db8:aaaa:bbbb:cccc:dddd:eeee:{i:04x}]:65535",
                        fingerprint="f" * 64) for i in range(40)]
    token = book.mint(authority, contacts, NOW, ttl_s=600).token()
    book.close()
    assert len(token) <= MAX_INVITE and "\n" not in token
    assert len(parse_invite(token).reachable()) == MAX_ADDRESSES


@pytest.mark.parametrize(("address", "fingerprint"), [
    ("evil host:1", "f" * 64), ("10.0.0.1:0", "f" * 64), ("x" * 300, "f" * 64),
    ("10.0.0.1:1", ""), ("10.0.0.1:1", "F" * 64), ("10.0.0.1:1", "f" * 65)])
def test_an_invite_with_a_bad_contact_is_damaged(authority: Authority, address: str,
                                                 fingerprint: str) -> None:
    body = {"mesh_id": authority.mesh_id, "authority_public_key": b64e(authority.public_key),
            "address": "192.0.2.1:7070", "invite_id": "00", "secret": "s", "expires_at": NOW,
            "contacts": [{"address": address, "fingerprint": fingerprint}]}
    with pytest.raises(MembershipError) as info:
        parse_invite("covey-invite:" + b64e(json.dumps(body).encode()))
    assert info.value.reason == "malformed"
