from django.urls import include, path

from shop.products import views

# Unknown paths and malformed ids answer JSON like every other error.
handler404 = "shop.api.not_found"

urlpatterns = [
    path("", include("djscale.urls")),
    path("api/products/", views.products),
    path("api/products/<int:product_id>", views.product),
    path("api/products/categories/", views.categories),
    path("api/products/openapi.json", views.schema),
]
