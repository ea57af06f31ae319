"""Ed25519 identities, did:key, detached signatures and the sign/verify/whoami verbs."""

from __future__ import annotations

import json
import stat
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import run_wbx
from workbooks.errors import NotFound, VerificationFailed
from workbooks.gitstore import GitStore
from workbooks.ledger.base58 import Base58Error, b58decode, b58encode
from workbooks.ledger.identity import (
    InvalidDid,
    KeyError_,
    identity_from_seed,
    key_path,
    load_identity,
    public_key_from_did,
    verify_signature,
)
from workbooks.ledger.signing import sign_file, verify_file

ZERO_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
RFC8032_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC8032_DID = "did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw"


def test_did_key_vector_all_zero_seed():
    assert identity_from_seed("dev", bytes(32)).did == ZERO_DID


def test_did_key_vector_rfc8032_test1():
    ident = identity_from_seed("dev", bytes.fromhex(RFC8032_SEED))
    assert ident.did == RFC8032_DID
    assert ident.public_key.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert public_key_from_did(RFC8032_DID) == ident.public_key


@given(st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_base58_round_trips_including_leading_zeros(data):
    assert b58decode(b58encode(data)) == data


def test_base58_known_values_and_alphabet():
    assert b58encode(b"") == "" and b58encode(b"\0\0") == "11"
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"
    for bad in ("0", "O", "I", "l", "+", "é"):
        with pytest.raises(Base58Error):
            b58decode("z" + bad)


@pytest.mark.parametrize(
    "did",
    [
        "did:web:example.com",
        "did:key:" + "f" + "ed01" + "00" * 32,  # base16 multibase, not base58btc
        "did:key:6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",  # no multibase prefix
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooW0",  # '0' is not base58
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWI",  # 'I' neither
        "did:key:z" + b58encode(b"\xe7\x01" + b"\x02" * 33),  # secp256k1 multicodec
        "did:key:z" + b58encode(b"\xed\x01" + b"\x01" * 31),  # short key
        "did:key:z" + b58encode(b"\xed\x01" + b"\x01" * 33),  # long key
        "did:key:z1" + ZERO_DID[9:],  # a leading '1' (zero byte) makes the prefix wrong
        "did:key:z",
        "",
        "DID:KEY:" + ZERO_DID[8:],
        None,
        "did:key:z" + "2" * 200,
    ],
)
def test_did_decoding_rejects_wrong_prefix_length_alphabet(did):
    with pytest.raises(InvalidDid):
        public_key_from_did(did)


def test_signatures_verify_only_for_their_did_and_message():
    a, b = identity_from_seed("a", bytes(32)), identity_from_seed("b", bytes.fromhex(RFC8032_SEED))
    sig = a.sign(b"msg")
    assert verify_signature(a.did, b"msg", sig)
    assert not verify_signature(b.did, b"msg", sig)
    assert not verify_signature(a.did, b"msg2", sig)
    assert not verify_signature(a.did, b"msg", sig[:-1])
    assert not verify_signature(a.did, b"msg", bytes(64))
    assert not verify_signature("did:key:zzz", b"msg", sig)
    assert "private" not in repr(a) and RFC8032_SEED not in repr(b)


def test_tenant_key_file_created_once_0600_and_stable(tmp_path):
    one = load_identity(tmp_path, "acme")
    path = key_path(tmp_path, "acme")
    assert path == tmp_path / ".workbooks" / "acme.ed25519"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_identity(tmp_path, "acme").did == one.did
    assert load_identity(tmp_path, "other").did != one.did
    path.chmod(0o644)
    assert load_identity(tmp_path, "acme").did == one.did
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a loose key is tightened


def test_concurrent_first_use_yields_one_key(tmp_path):
    dids, errors = [], []

    def load():
        try:
            dids.append(load_identity(tmp_path, "race").did)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(dids)) == 1


def test_corrupt_key_file_is_an_error_not_a_new_identity(tmp_path):
    path = key_path(tmp_path, "dev")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"short")
    with pytest.raises(KeyError_):
        load_identity(tmp_path, "dev")
    assert path.read_bytes() == b"short"


def test_primary_tenant_key_from_wb_signing_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WB_SIGNING_KEY", RFC8032_SEED)
    monkeypatch.delenv("WB_PRIMARY_TENANT", raising=False)
    assert load_identity(tmp_path, "dev").did == RFC8032_DID
    assert load_identity(tmp_path / "fresh-box", "dev").did == RFC8032_DID  # survives a fresh box
    assert not key_path(tmp_path, "dev").exists()  # derived, never written
    assert load_identity(tmp_path, "other").did != RFC8032_DID
    monkeypatch.setenv("WB_PRIMARY_TENANT", "other")
    assert load_identity(tmp_path, "other").did == RFC8032_DID
    monkeypatch.setenv("WB_SIGNING_KEY", "zz" * 32)
    with pytest.raises(KeyError_):
        load_identity(tmp_path, "other")
    monkeypatch.setenv("WB_SIGNING_KEY", "00" * 31)
    with pytest.raises(KeyError_):
        load_identity(tmp_path, "other")


def test_key_never_committed_even_by_add_all(tmp_path):
    load_identity(tmp_path, "dev")
    gs = GitStore(tmp_path, "dev")
    # even a key copied into the work tree stays out
    (tmp_path / "dev").mkdir(exist_ok=True)
    gs.ensure()
    (tmp_path / "dev" / ".workbooks").mkdir()
    (tmp_path / "dev" / ".workbooks" / "dev.ed25519").write_bytes(key_path(tmp_path, "dev").read_bytes())
    (tmp_path / "dev" / "copy.ed25519").write_bytes(b"x" * 32)
    (tmp_path / "dev" / "page.org").write_text("* hi\n")
    gs.commit_all("add all")
    assert gs.ls_files() == [".gitignore", "page.org"]


def test_sign_and_verify_detached(tmp_path):
    ident = identity_from_seed("dev", bytes(32))
    f = tmp_path / "doc.org"
    f.write_bytes(b"* Title\nbody\n")
    res = sign_file(f, ident)
    sig = json.loads((tmp_path / "doc.org.sig").read_text())
    assert {"did", "alg", "sig", "sha256"} <= set(sig) and sig["did"] == ZERO_DID and sig["alg"] == "Ed25519"
    assert res["sig_file"] == str(tmp_path / "doc.org.sig")
    assert verify_file(f)["valid"] is True
    renamed = tmp_path / "renamed.org"
    renamed.write_bytes(f.read_bytes())
    assert verify_file(renamed, sig=tmp_path / "doc.org.sig")["valid"]
    with pytest.raises(VerificationFailed):
        verify_file(f, expected_did=RFC8032_DID)
    f.write_bytes(b"* Title\nbody!\n")
    with pytest.raises(VerificationFailed, match="changed since it was signed"):
        verify_file(f)


def test_forged_and_swapped_signatures_fail(tmp_path):
    a = identity_from_seed("a", bytes(32))
    b = identity_from_seed("b", bytes.fromhex(RFC8032_SEED))
    f = tmp_path / "x.txt"
    f.write_text("hello")
    sign_file(f, a)
    doc = json.loads((tmp_path / "x.txt.sig").read_text())
    forged = dict(doc, sig=("0" if doc["sig"][0] != "0" else "1") + doc["sig"][1:])
    (tmp_path / "x.txt.sig").write_text(json.dumps(forged))
    with pytest.raises(VerificationFailed, match="forged"):
        verify_file(f)
    (tmp_path / "x.txt.sig").write_text(json.dumps(dict(doc, did=b.did)))  # claim someone else signed
    with pytest.raises(VerificationFailed):
        verify_file(f)
    (tmp_path / "x.txt.sig").write_text("not json")
    with pytest.raises(VerificationFailed):
        verify_file(f)
    (tmp_path / "x.txt.sig").unlink()
    with pytest.raises(VerificationFailed, match="no signature"):
        verify_file(f)
    with pytest.raises(NotFound):
        verify_file(tmp_path / "missing.txt")


def test_cli_whoami_sign_verify(tmp_path):
    env = {"WB_DATA": str(tmp_path / "data"), "WB_SIGNING_KEY": "00" * 32, "WB_PRIMARY_TENANT": "dev"}
    p = run_wbx("whoami", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"tenant": "dev", "did": ZERO_DID, "key": "WB_SIGNING_KEY"}
    assert run_wbx("whoami", "--tenant", "acme", env=env).returncode == 4  # no such tenant: nothing created
    assert not (tmp_path / "data").exists()
    assert run_wbx("init", "--tenant", "acme", env=env).returncode == 0
    p = run_wbx("whoami", "--tenant", "acme", env=env)
    other = json.loads(p.stdout)
    assert other["tenant"] == "acme" and other["did"].startswith("did:key:z6Mk") and other["did"] != ZERO_DID
    doc = tmp_path / "w.org"
    doc.write_text("* A workbook\n")
    p = run_wbx("sign", str(doc), env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "w.org.sig").read_text())["did"] == ZERO_DID
    p = run_wbx("verify", str(doc), env=env)
    assert p.returncode == 0 and json.loads(p.stdout)["valid"] is True
    doc.write_text("* A workbook, edited\n")
    p = run_wbx("verify", str(doc), env=env)
    assert p.returncode == 5
    assert "changed since it was signed" in p.stderr.decode()
    p = run_wbx("sign", "-", env=env)
    assert p.returncode == 4
    p = run_wbx("whoami", "--tenant", "../etc", env=env)
    assert p.returncode != 0 and "invalid tenant" in p.stderr.decode()
