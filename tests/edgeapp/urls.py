from django.urls import path

from tests.edgeapp import views

urlpatterns = [
    path("catalog", views.catalog),
    path("catalog-cookie", views.catalog_with_cookie),
    path("django-public", views.django_public),
    path("account", views.account),
    path("session", views.start_session),
    path("whoami", views.whoami),
]
