#!/usr/bin/env python3
"""Keys and tokens for tests/auth.rs, made by an independent JWT library (PyJWT with `cryptography`).

usage: mint.py DIR NOW
Writes the key files into DIR (HMAC secrets, PEM public keys, a JWKS document) and prints one JSON
object mapping each test case to a token minted at time NOW (seconds since the epoch). Standard
library plus PyJWT and cryptography only.
"""
import base64
import hashlib
import hmac
import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISS, AUD = "game-backend", "ringgate"


def pem_public(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header, claims, sign):
    """A token built by hand, for what PyJWT refuses to make (alg none, HMAC keyed with a PEM)."""
    head = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    return head + "." + b64url(sign(head.encode()))


def main():
    out, now = sys.argv[1], int(sys.argv[2])
    os.makedirs(out, exist_ok=True)

    def write(name, data):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

    secrets = {alg: os.urandom(48) for alg in ("HS256", "HS384", "HS512")}
    for alg, s in secrets.items():
        write(f"{alg.lower()}.secret", s)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    jwks_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_ec = ec.generate_private_key(ec.SECP256R1())
    write("rsa.pem", pem_public(rsa_key))
    write("p256.pem", pem_public(p256))
    write("p384.pem", pem_public(p384))
    write("ed25519.pem", pem_public(ed))
    jwk_rsa = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(jwks_rsa.public_key()))
    jwk_ec = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(jwks_ec.public_key()))
    jwk_rsa.update(kid="rsa-1", use="sig", alg="RS256")
    jwk_ec.update(kid="ec-1", use="sig", alg="ES256")
    write("jwks.json", json.dumps({"keys": [jwk_rsa, jwk_ec]}).encode())

    def claims(**over):
        c = {"sub": "player-7", "iss": ISS, "aud": AUD, "exp": now + 600, "iat": now,
             "room": "lobby-3", "role": "guest", "email": "not@forwarded"}
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def enc(key, alg, kid=None, **over):
        headers = {"kid": kid} if kid else None
        return jwt.encode(claims(**over), key, algorithm=alg, headers=headers)

    t = {}
    for alg, s in secrets.items():
        t[f"ok_{alg.lower()}"] = enc(s, alg)
    t["ok_rs256"] = enc(rsa_key, "RS256")
    t["ok_rs512"] = enc(rsa_key, "RS512")
    t["ok_ps256"] = enc(rsa_key, "PS256")
    t["ok_es256"] = enc(p256, "ES256")
    t["ok_es384"] = enc(p384, "ES384")
    t["ok_eddsa"] = enc(ed, "EdDSA")
    t["ok_jwks_rs256"] = enc(jwks_rsa, "RS256", kid="rsa-1")
    t["ok_jwks_es256"] = enc(jwks_ec, "ES256", kid="ec-1")
    t["ok_numeric_sub"] = enc(secrets["HS256"], "HS256", sub=None, uid=4242)
    t["within_leeway"] = enc(secrets["HS256"], "HS256", exp=now - 10)
    t["expired"] = enc(secrets["HS256"], "HS256", exp=now - 120)
    t["not_yet_valid"] = enc(secrets["HS256"], "HS256", nbf=now + 120)
    t["no_exp"] = enc(secrets["HS256"], "HS256", exp=None)
    t["wrong_issuer"] = enc(secrets["HS256"], "HS256", iss="someone-else")
    t["wrong_audience"] = enc(secrets["HS256"], "HS256", aud="another-service")
    t["audience_list"] = enc(secrets["HS256"], "HS256", aud=["x", AUD])
    t["no_sub"] = enc(secrets["HS256"], "HS256", sub=None)
    t["unknown_kid"] = enc(jwks_rsa, "RS256", kid="rsa-2")
    t["wrong_key"] = enc(os.urandom(48), "HS256")
    t["other_rsa_key"] = enc(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    ok = t["ok_es256"].split(".")
    forged = json.loads(base64.urlsafe_b64decode(ok[1] + "=" * (-len(ok[1]) % 4)))
    forged["sub"] = "admin"
    t["tampered"] = ".".join([ok[0], b64url(json.dumps(forged).encode()), ok[2]])
    t["alg_none"] = raw_token({"alg": "none", "typ": "JWT"}, claims(), lambda _: b"")
    # The classic confusion: HS256 keyed with the server's RSA public key, which an attacker knows.
    t["hs256_with_rsa_public_key"] = raw_token(
        {"alg": "HS256", "typ": "JWT"}, claims(sub="attacker"),
        lambda head: hmac.new(pem_public(rsa_key), head, hashlib.sha256).digest())
    t["garbage"] = "not.a.token"
    print(json.dumps(t))


if __name__ == "__main__":
    main()
