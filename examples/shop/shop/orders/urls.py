from django.urls import include, path

from shop.orders import views

urlpatterns = [
    path("", include("djscale.urls")),
    path("api/orders/", views.orders),
    path("api/orders/openapi.json", views.schema),
]
