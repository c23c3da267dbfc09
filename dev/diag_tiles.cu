// DiagonalKScale (csrc/tile_ops.cuh) against the per-element scaling it replaced, bit for
// bit, on 100k random 16 x 16 bf16 tiles and weights from 1e-40 to 1e4 (the kernel's own
// decay weights among them); prints how many elements differ and by how many ulps, in
// the normal range and below it. Built and run by dev/run_verify.sh.
#include "tile_ops.cuh"
#include <cstdio>
using namespace lightning_attn2;
__device__ unsigned H(unsigned x){x^=x>>16;x*=0x7feb352du;x^=x>>15;x*=0x846ca68bu;x^=x>>16;return x;}
__device__ float U(unsigned s){return (H(s)&0xffffff)/16777216.f;}
__device__ int O(unsigned short b){return b&0x8000?-(int)(b&0x7fff):(int)b;}
__global__ void K(int*r){
 int l=threadIdx.x,g=l/4,t=l%4,T=blockIdx.x,m=T%4;__shared__ float w[16];
 if(l<16){float u=U(T*977+l),v;
  if(T%3==0){float kv=exp10f(-6.f+10.f*U(T*31));float s=T%2?10.f:exp2f(-8.f*U(T*37));int val=1+H(T)%64;int d=val-1-(16*(T/3%4)+l);v=d<0?0.f:kv*float(exp(-double(s)*d));if(T%6==3)v*=float(d);}
  else v=H(T*977+l)%9==0?0.f:exp10f(-40.f+44.f*u);w[l]=v;}
 __syncwarp();
 uint32_t a[4],b[4];
 for(int j=0;j<4;j++){float x[2];for(int e=0;e<2;e++){unsigned s=T*4096+(g+8*(j&1))*16+2*t+8*(j>>1)+e;float z=2.f*U(s)-1.f;
  x[e]=m==0?z:m==1?z*exp10f(60.f*U(s+7)-30.f):m==2?(H(s)%2?0.f:z):__uint_as_float(H(s)&0xfeffffffu);}
  a[j]=b[j]=pack2<__nv_bfloat16>(x[0],x[1]);}
 uint4 f=diagonal_scale_fragments(0,l,[&](int k){return w[k];});
 scale_columns_on_tensor_cores(a,f);
 for(int j=0;j<4;j++){float2 x=unpack2<__nv_bfloat16>(b[j]);float s0=w[2*t+8*(j>>1)],s1=w[2*t+1+8*(j>>1)];b[j]=pack2<__nv_bfloat16>(x.x*s0,x.y*s1);
  for(int e=0;e<2;e++){unsigned short p=a[j]>>(16*e),q=b[j]>>(16*e);float fp=__uint_as_float(unsigned(p)<<16),fq=__uint_as_float(unsigned(q)<<16);
   float we=w[2*t+e+8*(j>>1)];atomicAdd(r,1);
   if(p==q||(fp!=fp&&fq!=fq)||(fp==0&&fq==0))continue;
   bool fin=isfinite(fp)&&isfinite(fq);int d=abs(O(p)-O(q));
   bool tiny=we<exp2f(-118.f)||fabsf(fq)<exp2f(-126.f)||fabsf(fp)<exp2f(-126.f);
   int c=!fin?3:tiny?2:1;atomicAdd(r+c,1);atomicMax(r+4+c,fin?d:0);
   if(c==1&&d>1)printf("T%d w=%g new=%g old=%g\n",T,we,fp,fq);}}}
int main(){int*r,h[8];cudaMalloc(&r,64);cudaMemset(r,0,64);K<<<100000,32>>>(r);cudaMemcpy(h,r,32,cudaMemcpyDeviceToHost);
 printf("%s elems=%d normal_diff=%d max_ulp=%d tiny_diff=%d max_ulp=%d nonfinite_diff=%d\n",cudaGetErrorString(cudaGetLastError()),h[0],h[1],h[5],h[2],h[6],h[3]);}
