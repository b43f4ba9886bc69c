// Sign-in: the token is checked against /v1/whoami before it is kept in session storage.
import { ApiError, api, session, show } from "./console.js";

const form = document.getElementById("signin-form");
const error = document.getElementById("signin-error");

async function autoSignIn() {
  // With auth disabled (development), no token is needed: go straight to the jobs.
  try {
    const me = await api("/v1/whoami", { token: session.token() || "", handle401: true });
    if (me) window.location.assign("/ui/jobs");
  } catch {
    /* stay here and ask for a token */
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = form.elements.token.value.trim();
  if (!token) {
    show(error, "Enter an API token.");
    return;
  }
  try {
    await api("/v1/whoami", { token, handle401: true });
  } catch (exc) {
    const refused = exc instanceof ApiError && exc.status === 401;
    show(error, refused ? "This token was refused." : `Sign-in failed: ${exc.message}`);
    form.elements.token.value = "";
    return;
  }
  session.signIn(token);
  window.location.assign("/ui/jobs");
});

autoSignIn();
