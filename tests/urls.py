from django.urls import include, path

urlpatterns = [
    path("", include("djscale.urls")),
    path("edge/", include("tests.edgeapp.urls")),
    path("queryapp/", include("tests.queryapp.urls")),
]
