"""age key pairs for the encryption tests, made by the real age-keygen."""
import os
import subprocess


def make_key(directory, name="key.txt"):
    """(identity path, public key); age-keygen writes the identity file 0600."""
    path = os.path.join(str(directory), name)
    subprocess.run(["age-keygen", "-o", path], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", path], check=True, capture_output=True, text=True).stdout.strip()
    return path, public
