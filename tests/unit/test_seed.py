"""Seed generator logic that needs no server: scale table and argument checks."""
import pytest

from testenv.seed.minimarket_seed import SeedError, main, scale


def test_scale_maps_rows_to_table_sizes():
    assert scale(30000) == {
        "categorias": 24, "proveedores": 60, "productos": 1500, "historial_precios": 6010,
        "movimientos_stock": 30000, "ventas": 10000, "venta_items": 30000,
    }
    small = scale(10)
    assert (small["productos"], small["proveedores"], small["ventas"]) == (50, 8, 3)


def test_scale_refuses_tiny_scales():
    with pytest.raises(SeedError, match="rows=9 is too small; use --rows 10 or more"):
        scale(9)


def test_cli_refuses_password_in_dsn(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--dsn", "host=127.0.0.1 dbname=x password=secreto", "--rows", "10"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--dsn must not contain a password; set PGPASSWORD or use a passfile" in err
    assert "secreto" not in err
