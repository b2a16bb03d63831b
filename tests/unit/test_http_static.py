"""Hashed static files are served public, one year, immutable (whitenoise + manifest)."""

from __future__ import annotations

from pathlib import Path

from django.core.management import call_command
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings

from djscale.http.static import StaticFilesMiddleware


def test_hashed_static_files_are_immutable_for_a_year(tmp_path: Path) -> None:
    source = tmp_path / "src" / "css"
    source.mkdir(parents=True)
    (source / "app.css").write_text("body { color: red }\n" * 50)
    root = tmp_path / "static"
    from django.conf import settings

    with override_settings(
        INSTALLED_APPS=[*settings.INSTALLED_APPS, "django.contrib.staticfiles"],
        STATIC_URL="/static/", STATIC_ROOT=str(root), STATICFILES_DIRS=[str(tmp_path / "src")],
        STORAGES={**settings.STORAGES, "staticfiles": {
            "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}},
    ):
        call_command("collectstatic", "--noinput", verbosity=0)
        from django.templatetags.static import static

        hashed = static("css/app.css")
        assert hashed != "/static/css/app.css"  # the manifest gave it a content hash

        def app(request: HttpRequest) -> HttpResponse:
            return HttpResponse("not static", status=404)

        middleware = StaticFilesMiddleware(app)
        response = middleware(RequestFactory().get(hashed, HTTP_ACCEPT_ENCODING="gzip"))
        assert response.status_code == 200
        assert response["Cache-Control"] == "max-age=31536000, public, immutable"
        assert response["Content-Encoding"] == "gzip"
        plain = middleware(RequestFactory().get("/static/css/app.css"))
        assert "immutable" not in plain["Cache-Control"]
