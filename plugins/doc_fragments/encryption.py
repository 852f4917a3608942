# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  age_recipients:
    description:
      - Encrypt new archives with C(age) for these public keys (the C(age1...) line that C(age-keygen) prints, or an
        C(ssh-ed25519 ...) / C(ssh-rsa ...) public key). Any one of the matching private keys can decrypt the archive.
      - The archive is then named C(<kind>_<env>_<YYYYMMDD_HHMMSS>.tar.gz.age) (C(.tar.zst.age), C(.tar.age)) and is
        encrypted while it is written, nothing in clear text reaches the disk. The C(_metadata.json) stays readable;
        its C(size) and C(sha256) are those of the encrypted file and C(encryption.recipients) lists these public keys.
      - Empty (the default) writes unencrypted archives. Only used when an archive is written.
    type: list
    elements: str
    default: []
  age_identity_file:
    description:
      - Path, on the target host, of an C(age) identity file (written by C(age-keygen)) or an unencrypted SSH private
        key matching one of the recipients of an encrypted archive. Needed to restore or verify an encrypted archive;
        ignored for archives that are not encrypted.
      - The key is tried on the archive's header before anything is touched, so a missing or wrong key fails cleanly.
        Its content is never logged or returned, only its path. A file readable by others than its owner is reported
        as a warning.
    type: path
notes:
  - Encryption needs the C(age) program (Debian package C(age)) on the target host. How to make and keep the keys is
    explained in the collection's C(docs/modules/encryption.md).
"""
