from django.urls import include, path

from shop.products import views

urlpatterns = [
    path("", include("djscale.urls")),
    path("api/products/", views.products),
    path("api/products/<int:product_id>", views.product),
    path("api/products/categories/", views.categories),
    path("api/products/openapi.json", views.schema),
]
