package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go/logging"
	ecr "github.com/awslabs/amazon-ecr-credential-helper/ecr-login"
	ecrapi "github.com/awslabs/amazon-ecr-credential-helper/ecr-login/api"
	"github.com/chrismellard/docker-credential-acr-env/pkg/credhelper"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/google"
	"k8s.io/utils/clock"
)

// cloudKeychain is the manager's (or the CLI user's) identity in one
// cloud. It is asked only about registries of that cloud: anywhere else
// it is not called at all, so no cloud SDK wakes (and writes to stderr, or
// asks a metadata endpoint) for a public image.
type cloudKeychain struct {
	serves func(host string) bool
	*refreshing
}

// ECR's private registries; public.ecr.aws is public and asked
// anonymously.
var ecrHost = regexp.MustCompile(`^[0-9]{12}\.dkr[.-]ecr(-fips)?\.[a-z0-9-]+\.(amazonaws\.com|amazonaws\.com\.cn|amazonaws\.eu|on\.aws|on\.amazonwebservices\.com\.cn|sc2s\.sgov\.gov|c2s\.ic\.gov|cloud\.adc-e\.uk|csp\.hci\.ic\.gov)$`)

func isECR(host string) bool { return ecrHost.MatchString(host) }

// isGoogle is Container Registry (gcr.io and its regions) and Artifact
// Registry (<region>-docker.pkg.dev).
func isGoogle(host string) bool {
	return host == "gcr.io" || strings.HasSuffix(host, ".gcr.io") || strings.HasSuffix(host, ".pkg.dev")
}

func isACR(host string) bool {
	for _, s := range []string{".azurecr.io", ".azurecr.cn", ".azurecr.de", ".azurecr.us"} {
		if strings.HasSuffix(host, s) {
			return true
		}
	}
	return false
}

func defaultCloudKeychains() []*cloudKeychain {
	return []*cloudKeychain{
		{serves: isECR, refreshing: newRefreshing("ECR", helperKeychain{newHelper: newQuietECRHelper}, nil)},
		{serves: isGoogle, refreshing: newRefreshing("Google", google.Keychain, nil)},
		{serves: isACR, refreshing: newRefreshing("ACR", helperKeychain{newHelper: func(*bytes.Buffer) authn.Helper { return credhelper.NewACRCredentialsHelper() }}, nil)},
	}
}

// newCloudKeychain is a cloud keychain for tests: kc is called only for
// hosts serves accepts.
func newCloudKeychain(name string, serves func(string) bool, kc authn.Keychain, clk clock.PassiveClock) *cloudKeychain {
	return &cloudKeychain{serves: serves, refreshing: newRefreshing(name, kc, clk)}
}

// cloudCredentials are the credentials of the cloud keychains that serve
// repo's registry: usually none, at most one.
func cloudCredentials(cloud []*cloudKeychain, repo name.Repository) []credential {
	host := hostname(repo.RegistryStr())
	var out []credential
	for _, c := range cloud {
		if c.serves(host) {
			cred := c.credential(repo)
			cred.announce = true
			out = append(out, cred)
		}
	}
	return out
}

// helperKeychain calls a docker credential helper and, unlike
// authn.NewKeychainFromHelper, keeps its error, so that a cloud identity
// that was needed and failed says why, in one line.
type helperKeychain struct {
	// newHelper makes the helper for one call; what it logs goes to log.
	newHelper func(log *bytes.Buffer) authn.Helper
}

func (h helperKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	var log bytes.Buffer
	user, secret, err := h.newHelper(&log).Get(target.RegistryStr())
	if err != nil {
		if why := helperLogged(log.String()); why != "" {
			err = errors.New(why)
		}
		return nil, fmt.Errorf("no credentials for %s: %s", target.RegistryStr(), oneLine(err.Error()))
	}
	if user == "<token>" {
		return authn.FromConfig(authn.AuthConfig{Username: user, IdentityToken: secret}), nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: secret}), nil
}

// helperLogged picks the error out of what the ECR helper logged: it logs
// the cause and returns only "credentials not found".
var loggedError = regexp.MustCompile(`error="((?:[^"\\]|\\.)*)"`)

func helperLogged(log string) string {
	m := loggedError.FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		return ""
	}
	return strings.ReplaceAll(m[len(m)-1][1], `\"`, `"`)
}

// newQuietECRHelper is the ECR helper with its own log and the AWS SDK's
// silenced: the SDK otherwise writes warnings (IMDS fallbacks) to stderr.
func newQuietECRHelper(log *bytes.Buffer) authn.Helper {
	return ecr.NewECRHelper(ecr.WithLogger(log), ecr.WithClientFactory(quietECRClients{}))
}

// quietECRClients makes ECR clients whose AWS SDK logs nowhere.
type quietECRClients struct{ ecrapi.DefaultClientFactory }

func (f quietECRClients) NewClientFromRegion(region string) ecrapi.Client {
	return f.NewClientWithOptions(ecrapi.Options{Config: quietAWSConfig(region)})
}

func (f quietECRClients) NewClientWithFipsEndpoint(region string) (ecrapi.Client, error) {
	cfg := quietAWSConfig(region, awsconfig.WithEndpointDiscovery(aws.EndpointDiscoveryEnabled))
	return f.NewClientWithOptions(ecrapi.Options{Config: cfg}), nil
}

func quietAWSConfig(region string, opts ...func(*awsconfig.LoadOptions) error) aws.Config {
	opts = append(opts, awsconfig.WithRegion(region), awsconfig.WithLogger(logging.Nop{}))
	cfg, err := awsconfig.LoadDefaultConfig(context.Background(), opts...)
	if err != nil {
		// The client then fails for want of credentials, which is the
		// error the user reads.
		return aws.Config{Region: region, Logger: logging.Nop{}}
	}
	return cfg
}
