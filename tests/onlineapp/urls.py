from django.urls import include, path

from tests.onlineapp import views

urlpatterns = [
    path("", include("djscale.urls")),
    path("items/<int:item_id>/", views.item),
    path("items/<int:item_id>/bump/", views.bump),
    path("users/<int:user_id>/items/", views.create),
]
